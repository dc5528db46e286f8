"""CURVE key files in the data dir: the broker's key pair, the admins' allow-list, and helpers to
load keys for room-ctl and room-client. File logic only: no sockets.

Layout (directories 0700, files 0600, in the zcert format of ``zmq.auth.create_certificates``)::

    <data dir>/keys/broker.key          the broker's public key: room-ctl and clients need it
    <data dir>/keys/broker.key_secret   the broker's secret key
    <data dir>/keys/admin.key_secret    the first admin's key pair: room-ctl's default --key
    <data dir>/keys/admin.key           the first admin's public key
    <data dir>/keys/admins/NAME.key     the allow-list: public keys that may use the control socket
    <data dir>/keys/chat.key            a copy of broker.key, present while chat is encrypted
                                        (--curve), so room-client on this host finds it

The broker creates its pair and the first admin's on first start. ``room-broker keys`` edits the
allow-list; the running broker re-reads it when the directory changes (``AllowList.refresh``).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import zmq
import zmq.auth
from zmq.utils import z85

from broker.wire.protocol import NAME_RULE, valid_name

KEYS_DIR: Final = "keys"
ADMINS_DIR: Final = "admins"
BROKER: Final = "broker"
FIRST_ADMIN: Final = "admin"
CHAT: Final = "chat"
PUBLIC: Final = ".key"
SECRET: Final = ".key_secret"
KEY_LENGTH: Final = 40
"""Characters of a z85-encoded CURVE key."""


class KeyFileError(Exception):
    """A key file is missing, unreadable or unsafe; the message is one line for a person."""


@dataclass(frozen=True, slots=True)
class KeyDir:
    """Where the key files of one data dir live."""

    root: Path

    @classmethod
    def of(cls, data_dir: Path) -> KeyDir:
        return cls(data_dir / KEYS_DIR)

    @property
    def admins(self) -> Path:
        return self.root / ADMINS_DIR

    @property
    def broker_public(self) -> Path:
        return self.root / (BROKER + PUBLIC)

    @property
    def broker_secret(self) -> Path:
        return self.root / (BROKER + SECRET)

    @property
    def admin_secret(self) -> Path:
        return self.root / (FIRST_ADMIN + SECRET)

    @property
    def chat_public(self) -> Path:
        return self.root / (CHAT + PUBLIC)

    def allowed(self, name: str) -> Path:
        return self.admins / (name + PUBLIC)


# ---- creating ----------------------------------------------------------------------------------


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)


def _create_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """A new key pair ``name.key`` and ``name.key_secret`` in ``directory``, both 0600. The pair
    is made in a private temporary directory and moved into place, so no reader ever sees a
    half-written or world-readable file."""
    with tempfile.TemporaryDirectory(dir=directory, prefix=".new-") as tmp:
        public, secret = zmq.auth.create_certificates(tmp, name)
        for made in (public, secret):
            os.chmod(made, 0o600)
        targets = directory / (name + PUBLIC), directory / (name + SECRET)
        os.replace(secret, targets[1])
        os.replace(public, targets[0])
    return targets


def _write_public(path: Path, key: bytes, comment: str) -> None:
    """A public-only certificate (zcert format), written whole and atomically, mode 0600."""
    text = f"#   ZeroMQ CURVE Public Certificate: {comment}\nmetadata\ncurve\n"
    text += f'    public-key = "{key.decode()}"\n'
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".new-", suffix=PUBLIC)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def ensure(data_dir: Path) -> KeyDir:
    """The data dir's keys, created on first use: the broker's pair, and the first admin's pair
    with its public key on the allow-list. Existing keys are never replaced."""
    kd = KeyDir.of(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _private_dir(kd.root)
        _private_dir(kd.admins)
        if not kd.broker_secret.exists():
            _create_pair(kd.root, BROKER)
        if not kd.admin_secret.exists():
            public, _ = _create_pair(kd.root, FIRST_ADMIN)
            key, _ = zmq.auth.load_certificate(public)
            _write_public(kd.allowed(FIRST_ADMIN), key, "the first admin")
    except OSError as exc:
        raise KeyFileError(f"cannot create the keys in {kd.root}: {exc.strerror or exc}") from None
    return kd


def mark_chat(kd: KeyDir, encrypted: bool) -> None:
    """Publish the broker's public key as ``chat.key`` while chat traffic is encrypted, so that
    room-client on this host finds it; remove it otherwise."""
    try:
        if encrypted:
            _write_public(kd.chat_public, load_public(kd.broker_public), "the broker (chat)")
        else:
            kd.chat_public.unlink(missing_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot write {kd.chat_public}: {exc.strerror or exc}") from None


# ---- loading -----------------------------------------------------------------------------------


def valid_key(key: bytes) -> bool:
    """True for a z85-encoded 32-byte CURVE key."""
    if len(key) != KEY_LENGTH:
        return False
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError, IndexError, TypeError):
        return False


def _read(path: Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except ValueError:
        raise KeyFileError(f"{path} holds no CURVE public key") from None
    except OSError as exc:
        reason = exc.strerror or "cannot be read"
        raise KeyFileError(f"{path} {'does not exist' if not path.exists() else reason}") from None
    if not valid_key(public) or (secret is not None and not valid_key(secret)):
        raise KeyFileError(f"{path} holds a malformed CURVE key")
    return public, secret


def load_public(path: Path) -> bytes:
    """The public key in a certificate file (public or secret)."""
    return _read(path)[0]


def load_secret(path: Path) -> tuple[bytes, bytes]:
    """The key pair in a secret certificate; refused when others could read the file."""
    public, secret = _read(path)
    if secret is None:
        raise KeyFileError(f"{path} holds only a public key: give the .key_secret file")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path} is readable by others (mode {stat.S_IMODE(mode):o}): chmod 600 {path}"
        )
    return public, secret


def key_or_file(value: str) -> bytes:
    """A public key given as its 40 z85 characters, or as a certificate file."""
    raw = value.strip().encode()
    if valid_key(raw) and not Path(value).exists():
        return raw
    return load_public(Path(value).expanduser())


def short(key: bytes | str) -> str:
    """The first characters of a key: enough to tell keys apart in logs and listings."""
    text = key.decode() if isinstance(key, bytes) else key
    return text[:8]


# ---- the allow-list ----------------------------------------------------------------------------


def read_allow_list(directory: Path) -> tuple[dict[bytes, str], list[str]]:
    """Public key -> admin name for every ``NAME.key`` in ``directory``, and one line per file
    that could not be used."""
    keys: dict[bytes, str] = {}
    problems: list[str] = []
    try:
        entries = sorted(directory.glob("*" + PUBLIC))
    except OSError as exc:
        return {}, [f"cannot list {directory}: {exc.strerror or exc}"]
    for path in entries:
        try:
            keys[load_public(path)] = path.name[: -len(PUBLIC)]
        except KeyFileError as exc:
            problems.append(str(exc))
    return keys, problems


def _signature(directory: Path) -> tuple[tuple[str, int, int, int], ...] | None:
    """What identifies the allow-list's content: name, inode, mtime and size of each ``.key`` file
    (None: no directory). The directory's own mtime is not enough: its granularity is a clock tick,
    so two quick edits may share one."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return None
    found = []
    for entry in entries:
        if entry.name.endswith(PUBLIC):
            try:
                st = entry.stat()
            except OSError:  # removed meanwhile: the next look sees it gone
                continue
            found.append((entry.name, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(sorted(found))


class AllowList:
    """The admin public keys, re-read when their directory changes.

    ``admits`` runs on the ZAP thread (``zap.py``) and only reads ``keys``, which ``refresh``
    replaces whole.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.keys: dict[bytes, str] = {}
        self._stamp: tuple[tuple[str, int, int, int], ...] | None = None
        self._read = False
        self.refused: list[bytes] = []
        """Keys the callback refused, oldest first, for the broker to log (capped)."""

    def refresh(self) -> list[str] | None:
        """Re-read the directory if it changed since the last call: None when unchanged, else
        the problems found (possibly none). Every edit by ``room-broker keys`` writes a new file
        (a new inode) or removes one, so no edit goes unseen."""
        if self.directory is None:
            return None
        stamp = _signature(self.directory)
        if self._read and stamp == self._stamp:
            return None
        self._stamp, self._read = stamp, True
        if stamp is None:
            self.keys = {}
            return [f"the admin allow-list {self.directory} does not exist"]
        self.keys, problems = read_allow_list(self.directory)
        return problems

    def name(self, key: bytes | str | None) -> str | None:
        """The admin name of a z85 public key, or None when it is not (or no longer) allowed."""
        if not key:
            return None
        return self.keys.get(key.encode() if isinstance(key, str) else key)

    def admits(self, key: bytes) -> bool:
        """Whether the z85 public ``key`` may use the control socket (a refused one is kept to
        log)."""
        allowed = key in self.keys
        if not allowed and len(self.refused) < 64:
            self.refused.append(key)
        return allowed


# ---- managing (room-broker keys) ---------------------------------------------------------------


def _check_name(name: str) -> None:
    if not valid_name(name):
        raise KeyFileError(f"invalid admin name {name!r}: use {NAME_RULE}")


def listing(kd: KeyDir) -> list[tuple[str, str]]:
    """(name, public key) of every allowed admin, by name."""
    keys, problems = read_allow_list(kd.admins)
    if problems:
        raise KeyFileError(problems[0])
    return sorted((name, key.decode()) for key, name in keys.items())


def add(kd: KeyDir, name: str, public_file: Path) -> str:
    """Allow the public key in ``public_file`` (a public or secret certificate) as ``name``;
    only the public key is copied. Returns the key."""
    _check_name(name)
    key = load_public(public_file)
    target = kd.allowed(name)
    if target.exists():
        raise KeyFileError(f"an admin key named {name} exists: remove it first")
    holder = dict(read_allow_list(kd.admins)[0]).get(key)
    if holder is not None:
        raise KeyFileError(f"this key is already allowed as {holder}")
    _write_public(target, key, f"admin {name}")
    return key.decode()


def remove(kd: KeyDir, name: str) -> None:
    """Take ``name`` off the allow-list (its key pair files, if any, stay where they are)."""
    _check_name(name)
    try:
        kd.allowed(name).unlink()
    except FileNotFoundError:
        raise KeyFileError(f"no admin key named {name}: see `room-broker keys list`") from None


def new(kd: KeyDir, name: str, directory: Path | None = None) -> tuple[Path, str]:
    """A new key pair for admin ``name`` in ``directory`` (default: the keys dir), allowed at
    once. Returns the secret key file (for ``room-ctl --key``) and the public key."""
    _check_name(name)
    if kd.allowed(name).exists():
        raise KeyFileError(f"an admin key named {name} exists: remove it first")
    where = directory or kd.root
    if (where / (name + SECRET)).exists():
        raise KeyFileError(f"{where / (name + SECRET)} exists: choose another name or directory")
    try:
        where.mkdir(parents=True, exist_ok=True, mode=0o700)
        public, secret = _create_pair(where, name)
    except OSError as exc:
        raise KeyFileError(f"cannot create a key pair in {where}: {exc.strerror or exc}") from None
    return secret, add(kd, name, public)
