"""The web console (GET /console): static page + script (pages.py), its JSON views (api.py)
and server-side SVG charts (svg.py)."""
