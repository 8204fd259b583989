"""The OpenAI Responses API over the chat chain.

request.py   Responses request -> chat request (pure)
reply.py     chat completion -> response object (pure)
stream.py    chat chunks -> Responses streaming events (pure translator)
endpoint.py  POST /v1/responses, GET / DELETE /v1/responses/{id}, .../input_items
"""
