"""Reads <confdir>/policies/<group>: the only file access of policy groups.

Loading is all-or-nothing: every file is read and parsed before a Policy exists, so an error in
the last file leaves whatever policy the caller had untouched.
"""

from __future__ import annotations

from pathlib import Path

from oe.policygroups.groups import GROUPS
from oe.policygroups.parser import Policy, PolicyError, combine, parse_group


def load_policy(confdir: Path) -> Policy:
    """Load all five groups from <confdir>/policies; a missing file is an empty group. Any
    other file there is an error: a misspelled group would otherwise never apply."""
    _refuse_strangers(confdir / "policies")
    parsed = []
    for group in GROUPS:
        path = confdir / "policies" / group
        try:
            text = path.read_text(encoding="utf-8-sig")  # a BOM is no part of the first line
        except FileNotFoundError:
            continue
        except UnicodeDecodeError as exc:
            raise PolicyError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        except OSError as exc:
            raise PolicyError(f"{path}: cannot read: {exc.strerror}") from None
        parsed.append(parse_group(group, text, str(path)))
    return combine(parsed)


def _refuse_strangers(directory: Path) -> None:
    try:
        names = sorted(p.name for p in directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise PolicyError(f"{directory}: cannot read: {exc.strerror}") from None
    for name in names:
        if name not in GROUPS:
            raise PolicyError(f"{directory / name}: not a policy group (the files are "
                              f"{', '.join(GROUPS)})")
