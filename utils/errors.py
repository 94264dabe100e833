"""User-caused errors (bad paths, configs, files) that entry points report as one sentence without a traceback."""
import functools
import sys


class UserError(Exception):
    """An error the user can fix; its message is one sentence naming the file and the fix."""


def report_user_errors(main):
    """Decorator for entry points: print a UserError as `error: <sentence>` and exit 1 instead of a traceback."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
    return wrapper
