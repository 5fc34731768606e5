"""Policy groups: five files of CIDRs whose group decides each destination's fate.

parser.py is pure (text -> entries with file:line); loader.py is the only file access.
"""

from oe.policygroups.groups import GROUPS, SEMANTICS, GroupSemantics, prospective_table
from oe.policygroups.parser import Policy, PolicyEntry, PolicyError, combine, parse_group

__all__ = [
    "GROUPS",
    "SEMANTICS",
    "GroupSemantics",
    "Policy",
    "PolicyEntry",
    "PolicyError",
    "combine",
    "parse_group",
    "prospective_table",
]
