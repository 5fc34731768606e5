"""The host's RSA key: <confdir>/hostkey.pem, PKCS#8 PEM, mode 0600.

FreeS/WAN's `ipsec newhostkey` wrote /etc/ipsec.secrets with e = 3; oe uses e = 65537 and a
standard PKCS#8 file that openssl and strongSwan read as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from oe.dnskeys.records import encode_rsa_blob
from oe.errors import OeError

HOSTKEY_NAME = "hostkey.pem"
DEFAULT_BITS = 3072
MIN_BITS = 2048
MAX_BITS = 16384
PUBLIC_EXPONENT = 65537


class HostKeyError(OeError):
    """The host key cannot be made, read or written."""


def hostkey_path(confdir: Path) -> Path:
    return confdir / HOSTKEY_NAME


def generate(bits: int = DEFAULT_BITS) -> rsa.RSAPrivateKey:
    """A new RSA key, e = 65537."""
    if bits < MIN_BITS:
        raise HostKeyError(f"{bits} bits is below the minimum of {MIN_BITS}")
    if bits > MAX_BITS:
        raise HostKeyError(f"{bits} bits is above the maximum of {MAX_BITS}")
    return rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=bits)


def keygen(path: Path, bits: int = DEFAULT_BITS, force: bool = False) -> rsa.RSAPrivateKey:
    """`oe keygen`: a new key written to `path`; an existing file is kept unless `force`."""
    if path.exists() and not force:
        raise HostKeyError(f"{path} exists; use --force to replace it")
    key = generate(bits)
    write(path, key, force)
    return key


def write(path: Path, key: rsa.RSAPrivateKey, force: bool = False) -> None:
    """Write `key` as unencrypted PKCS#8 PEM, mode 0600; an existing file only with `force`."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    exists = HostKeyError(f"{path} exists; use --force to replace it")
    if path.exists() and not force:
        raise exists
    # Written beside the final name, then renamed (--force) or hard-linked (never replaces a
    # file that appeared meanwhile) into place: a crash leaves one whole key or none.
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except FileExistsError:
        raise exists from None
    except OSError as exc:
        raise HostKeyError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path) -> rsa.RSAPrivateKey:
    """Read the host key; every failure is one line naming the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise HostKeyError(f"no host key: {path} does not exist (make one with `oe keygen`)"
                           ) from None
    except OSError as exc:
        raise HostKeyError(f"cannot read {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise HostKeyError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise HostKeyError(f"{path} holds a {type(key).__name__}, not an RSA key")
    return key


def load_own(path: Path) -> rsa.RSAPrivateKey:
    """The host key as `oe start` and `oe reload` use it: what keygen would make, so at least
    MIN_BITS, and readable by its owner only (a key others can read speaks for anyone)."""
    key = load(path)
    if key.key_size < MIN_BITS:
        raise HostKeyError(f"{path}: RSA {key.key_size} bits is below the minimum of "
                           f"{MIN_BITS} (make a new one with `oe keygen --force`)")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise HostKeyError(f"{path}: mode {mode:04o} lets others read the host key "
                           f"(chmod 600 {path})")
    return key


def public_blob(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> bytes:
    """The RFC 3110 blob of the public half, as DNS publishes it."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    numbers = public.public_numbers()
    return encode_rsa_blob(numbers.e, numbers.n)
