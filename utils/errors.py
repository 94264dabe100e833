"""User-caused errors (bad paths, configs, files) that entry points report as one sentence without a traceback."""
import functools
import sys


class UserError(Exception):
    """An error the user can fix; its message is one sentence naming the file and the fix. `exit_code` is what the
    entry point exits with (1 unless a stage protocol says otherwise, e.g. 3 = baseline file missing)."""

    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code


def report_user_errors(main):
    """Decorator for entry points: print a UserError as `error: <sentence>` and exit with its code, no traceback."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)
    return wrapper
