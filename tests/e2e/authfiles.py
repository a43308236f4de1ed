"""Files the auth tests give the daemon: a directory its unprivileged
children may read (pytest's tmp_path is private to root), password files
made by mosquitto_passwd and iotd-passwd, and the auth role's log lines."""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("IOTD_TOOLS", str(REPO / "build" / "contrib")))

# The one line of a refused CONNECT (log_auth_refusal), as a fail2ban filter would match it.
REFUSAL = re.compile(r'refused REMOTE=(?P<host>[0-9a-fA-F.:]+) USER="(?P<user>[^"]*)" '
                     r'CONNACK=(?P<code>\d)')


class AuthDir:
    """A world-readable directory under /tmp, removed at the end."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="iotd-e2e-auth-"))
        os.chmod(self.path, 0o755)

    def file(self, name, text=""):
        p = self.path / name
        p.write_text(text)
        os.chmod(p, 0o644)
        return str(p)

    def mosquitto_passwd(self, name, users, hash_kind=None, create=True):
        """A password file written by Debian's mosquitto_passwd (users: {name: password})."""
        p = self.path / name
        first = create
        for user, password in users.items():
            argv = ["mosquitto_passwd"] + (["-H", hash_kind] if hash_kind else []) + \
                (["-c"] if first else []) + ["-b", str(p), user, password]
            subprocess.run(argv, check=True, capture_output=True, timeout=30)
            first = False
        os.chmod(p, 0o644)
        return str(p)

    def iotd_passwd(self, name, users, create=True):
        """A password file written by iotd-passwd (Argon2id), at its cheapest cost."""
        p = self.path / name
        first = create
        for user, password in users.items():
            argv = [str(TOOLS / "iotd-passwd"), "-t", "1", "-m", "64"] + \
                (["-c"] if first else []) + ["-b", str(p), user, password]
            subprocess.run(argv, check=True, capture_output=True, timeout=30)
            first = False
        os.chmod(p, 0o644)
        return str(p)

    def remove(self):
        shutil.rmtree(self.path, ignore_errors=True)


@pytest.fixture
def auth_dir():
    """An AuthDir for the test (import it into a test module to use it)."""
    d = AuthDir()
    yield d
    d.remove()


def file_broker(start_broker, path, user, password, **auth):
    """A daemon checking passwords against path; its start-up probe connects as user."""
    return start_broker(auth={"backend": "file", "password_file": path, **auth},
                        probe_auth=(user, password))


def mosquitto_passwd_has_sha512():
    """Debian 12's mosquitto_passwd (2.0.11) still offers -H sha512 (the $6$ form)."""
    out = subprocess.run(["mosquitto_passwd"], capture_output=True, text=True, timeout=10)
    return "sha512" in out.stdout + out.stderr and "-H sha512 " in out.stdout + out.stderr


def refusals(broker):
    """Every refusal line the daemon logged so far, as match objects."""
    return [m for m in REFUSAL.finditer(broker.log)]
