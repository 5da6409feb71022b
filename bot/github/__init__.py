"""GitHub mode: the PyGithub forge (`forge`), and the report script of the evaluate workflow (`report`)."""
