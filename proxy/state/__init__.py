"""Where each kind of state lives: embedded on this VM, or shared by every node through Redis
and PostgreSQL (`state:` in routes.yaml). See proxy/state/stores.py for the one table that
picks an implementation per kind at start; proxy/state/engines.py for the engines themselves."""
