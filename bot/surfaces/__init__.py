"""Surfaces: what people see of the research and what merges (bot.stepper's second port).

    LocalSurface   (bot.surfaces.local)   the terminal and the local git repository (`arbot run`)
    GitHubSurface  (bot.surfaces.github)  pull requests, check runs, comments and the GitHub merge (GitHub mode)
"""
