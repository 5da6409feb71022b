"""A fake GitHub for the tests of GitHub mode, honest against GitHub's published contract.

- `contract`: the extracted OpenAPI subset (openapi-subset.json), webhook schemas and examples, and validators.
- `serving`: run an ASGI app with uvicorn on 127.0.0.1 (random port) in a thread.
- `server`: the stateful fake REST API (FastAPI), validated against the contract on every request.
Regenerate the JSON files with scripts/extract_openapi.py.
"""
