"""Common options (--policy, --storage, --source, --json, --debug), accepted before or after a command."""

from __future__ import annotations

from dataclasses import dataclass, field

from backupkit.errors import UsageError
from backupkit.settings import Settings

VALUE_OPTIONS = ("--policy", "--storage", "--source")
FLAG_OPTIONS = ("--json", "--debug")


@dataclass
class Common:
    policy: str | None = None
    storage: str | None = None
    source: str | None = None
    json: bool = False
    debug: bool = False
    _settings: Settings | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        """Resolved settings (loads the policy file once)."""
        if self._settings is None:
            self._settings = Settings.resolve(self.policy, self.storage, self.source,
                                              self.json, self.debug, policy_checks)
        return self._settings


def policy_checks(policy, path) -> list[str]:
    """The semantic checks of a loaded policy file (schedule.checks; imported only then)."""
    from backupkit.schedule.checks import semantic_problems  # lazy: start-up time

    return semantic_problems(policy, path)


COMMON = Common()


def extract_common(argv: list[str]) -> tuple[Common, list[str]]:
    """Pull the common options out of argv wherever they stand; return them and the rest."""
    common = Common()
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        name, eq, value = arg.partition("=")
        if name in VALUE_OPTIONS:
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError(f"option {name} needs a value")
                value = argv[i + 1]
                i += 1
            setattr(common, name[2:], value)
        elif arg in FLAG_OPTIONS:
            setattr(common, arg[2:], True)
        else:
            rest.append(arg)
        i += 1
    return common, rest
