"""The webhook server of GitHub mode: `arbot serve`.

- `webhooks`: pure parsing and signature checks (no I/O), gidgethub/sansio style.
- `events`: pure routing of a verified event to the action the bot should take.
- `store`: durable state in SQLite (deliveries handled, budget usage, the pause switch).
- `app`: the FastAPI app that answers GitHub fast and hands the work to a background worker.
"""
