"""`arbot setup`: make a GitHub repository ready for the bot; idempotent, says what it changed.

- the `champion` branch (from the default branch's head),
- the labels arbot, arbot:loss, arbot:crash,
- branch protection on champion that pins the bot (GitHubForge.protect_champion): required check `arbot/verdict`
  from the bot's App (any source with a PAT), branches up to date, push restrictions naming only the App
  (organization repositories), code-owner reviews,
- branch protection on the default branch, whose evaluate workflow the bot dispatches (GitHubForge.protect_default):
  changes only through pull requests, code-owner review, and on an organization repository push restrictions
  naming only the code owner given with --owner (administrators alone without one),
- a tag ruleset refusing to create tags named like the default branch, champion or an experiment branch
  (GitHubForge.ensure_tag_ruleset): GitHub reports a tag's name as a workflow run's branch,
- auto-merge allowed on the repository (allow_auto_merge; optional: without it the bot merges wins itself),
- a CODEOWNERS entry for evaluator/ and .github/ (written into the local clone with --owner; committing it
  to the default branch, and so to champion, is left to the user: the bot never pushes outside its branches).
"""

from __future__ import annotations

from pathlib import Path

from bot.github.forge import LABELS, VERDICT_CHECK, GitHubForge

GUARDED = ("/evaluator/", "/.github/")


def codeowners(existing: str, owner: str) -> str:
    """CODEOWNERS text with an entry for each guarded path that lacks one (others left as they are)."""
    have = {line.split()[0] for line in existing.splitlines() if line.strip() and not line.lstrip().startswith("#")}
    missing = [path for path in GUARDED if path not in have]
    if not missing:
        return existing
    text = existing if not existing or existing.endswith("\n") else existing + "\n"
    text += "# arbot: the evaluator and the workflows decide what wins; changes to them need an owner's review\n"
    return text + "".join(f"{path} {owner}\n" for path in missing)


def pushers(owner: str | None) -> dict[str, list[str]]:
    """Who may push to (merge into) the default branch: the code owner, a user (@login) or a team (@org/team);
    administrators only without one."""
    name = (owner or "").lstrip("@")
    if "/" in name:
        return {"users": [], "teams": [name.split("/", 1)[1]], "apps": []}
    return {"users": [name] if name else [], "teams": [], "apps": []}


def run_setup(forge: GitHubForge, root: Path | None = None, owner: str | None = None) -> list[str]:
    """Apply the setup; each line of the answer is one change made (or says there was none)."""
    changes = []
    sha, created = forge.ensure_champion()
    if created:
        changes.append(f"created branch {forge.champion_branch} at {sha[:12]}")
    for name in forge.ensure_labels():
        changes.append(f"created label {name}")
    app_id, app_slug = forge.app() or (None, None)
    for change in forge.protect_champion(app_id, app_slug):
        changes.append(f"protected {forge.champion_branch}: {change}")
    for change in forge.protect_default(pushers(owner)):
        changes.append(f"protected {forge.repo.default_branch}: {change}")
    changes += forge.ensure_tag_ruleset()
    if forge.ensure_auto_merge():
        changes.append("allowed auto-merge on the repository")
    if root is not None and owner:
        path = root / ".github" / "CODEOWNERS"
        old = path.read_text() if path.exists() else ""
        new = codeowners(old, owner)
        if new != old:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(new)
            changes.append(f"wrote {path.relative_to(root)} (owner {owner} for {', '.join(GUARDED)}): "
                           f"commit it to the default branch and bring it into {forge.champion_branch}")
    if not changes:
        changes.append(f"nothing to change: {forge.champion_branch}, labels ({', '.join(LABELS)}), protection "
                       f"({VERDICT_CHECK} required on {forge.champion_branch}, pull requests on "
                       f"{forge.repo.default_branch}), the tag ruleset and auto-merge are in place")
    return changes
