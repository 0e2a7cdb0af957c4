"""A PKCS#11 token (an HSM, or SoftHSM2 for tests) as a key management service.

Backend ``pkcs11`` (:class:`Pkcs11Kms`)
    Every primary-key version is an AES-256 secret key object in the token, generated inside it with
    ``CKA_TOKEN``, ``CKA_PRIVATE``, ``CKA_SENSITIVE`` true, ``CKA_EXTRACTABLE`` false, and ``CKA_WRAP`` /
    ``CKA_UNWRAP`` as its only capabilities: its material never leaves the token. ``CKA_LABEL`` is the key
    name and ``CKA_ID`` the version as ASCII digits (``b"1"``, ``b"2"``...); the current version is the
    highest. Rotation generates the next version; older versions keep unwrapping.

Wrapping
--------
Data keys are wrapped inside the token with ``CKM_AES_KEY_WRAP_PAD`` (AES key wrap with padding, RFC 5649)
through ``C_WrapKey``: the data key is imported as a short-lived, extractable session object, wrapped, and
destroyed. Unwrapping is ``C_UnwrapKey`` into a session object whose ``CKA_VALUE`` is read and which is then
destroyed. (SoftHSM2 offers the key-wrap mechanisms only to ``C_WrapKey``/``C_UnwrapKey``, not to
``C_Encrypt``.) Only data keys whose length is a multiple of 8 bytes are wrapped (ppml's are 32): SoftHSM2
2.6 zero-pads other lengths *before* wrapping, so the result would not be RFC 5649 and would unwrap to a
longer key.

``WrappedKey(kms="pkcs11", key="<token label>/<key name>", version="<n>", wrapped=0x01 || RFC5649(key, dk))``:
the key identifier names the token, so envelopes of two tokens holding equally named keys are told apart;
the leading byte is the format (``0x01``: ``CKM_AES_KEY_WRAP_PAD``), the rest is exactly what
``cryptography.hazmat.primitives.keywrap.aes_key_wrap_with_padding`` computes with the same key.

Retiring a version destroys its key object and leaves a tombstone (a ``CKO_DATA`` object, label = key
name, ``CKA_APPLICATION`` = ``ppml retired key version``, value = the version), so that descriptions show
the version as retired and unwrapping says so instead of "does not exist". Tokens record no creation time
that SoftHSM2 returns reliably, so ``created`` is empty.

Sessions, login and threads
---------------------------
The module is loaded once per process and path (python-pkcs11 keeps one ``lib`` per path too), and every
call into it holds one lock per module: python-pkcs11 initializes modules with ``C_Initialize(NULL)``,
which promises the module single-threaded use, and SoftHSM2 then does no locking of its own (concurrent
calls fail or crash). Any number of threads may share a backend; their token calls take turns. PKCS#11
login state belongs to the whole process, not to a session: ppml logs in once per token and keeps that
session open. Another :class:`Pkcs11Kms` of the same process that presents a different PIN is refused (a
logged-in token would otherwise accept any PIN). A token created after the module was initialized is
invisible until it is initialized again (SoftHSM2 reads its configuration and token directory in
``C_Initialize``): :func:`refresh_tokens` does that, and a backend whose token is missing does it itself,
at most every few seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass, TokenFlag
from pkcs11 import exceptions as p11e

from ppml.crypto.datakey import DataKey
from ppml.crypto.envelope import WrappedKey
from ppml.errors import (
    AlreadyExistsError,
    ConfigError,
    KeyAccessError,
    NotFoundError,
    PpmlInsecureWarning,
    UsageError,
)
from ppml.keys.kms import KeyManagementService, KeyVersionInfo, PrimaryKeyInfo

__all__ = ["Pkcs11Kms", "refresh_tokens", "default_module", "MODULE_ENV", "PIN_ENV", "DEFAULT_KEY_NAME"]

MODULE_ENV = "PPML_PKCS11_MODULE"
PIN_ENV = "PPML_PKCS11_PIN"
DEFAULT_KEY_NAME = "default"
_SOFTHSM_PATHS = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/local/lib/softhsm/libsofthsm2.so",
                  "/opt/homebrew/lib/softhsm/libsofthsm2.so")
_FORMAT = b"\x01"  # 0x01 = CKM_AES_KEY_WRAP_PAD
_TOMBSTONE = "ppml retired key version"
_KEY_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_VERSION = re.compile(r"[1-9][0-9]{0,8}")
_RESCAN_INTERVAL = 5.0  # seconds between automatic re-initializations when a token is missing
_PIN_SALT = os.urandom(16)  # PINs are compared as salted digests so that no PIN stays in memory
_LOST_SESSION = (p11e.SessionHandleInvalid, p11e.SessionClosed, p11e.DeviceRemoved, p11e.TokenNotPresent,
                 p11e.UserNotLoggedIn)
_TAMPER_ERRORS = (p11e.GeneralError, p11e.EncryptedDataInvalid, p11e.EncryptedDataLenRange,
                  p11e.WrappedKeyInvalid, p11e.WrappedKeyLenRange, p11e.DataInvalid, p11e.DataLenRange)
Pin = str | Callable[[], str] | None


def default_module() -> str | None:
    """``$PPML_PKCS11_MODULE``, else the first SoftHSM2 library found in its usual places, else ``None``."""
    if os.environ.get(MODULE_ENV):
        return os.environ[MODULE_ENV]
    return next((path for path in _SOFTHSM_PATHS if Path(path).is_file()), None)


def _pin_digest(pin: str) -> bytes:
    return hmac.new(_PIN_SALT, pin.encode(), hashlib.sha256).digest()


class _TokenState:
    """One token as seen since the last initialization, with the one session ppml uses on it."""

    def __init__(self, token) -> None:
        self.token = token
        self.session = None  # logged in; kept open, since closing the last session logs the token out
        self.pin_digest: bytes | None = None  # None when code outside ppml logged the token in
        self.verified: weakref.WeakSet = weakref.WeakSet()  # backends whose PIN was checked


class _Library:
    """One loaded PKCS#11 module of this process, and the lock every call into it holds.

    python-pkcs11 initializes modules with ``C_Initialize(NULL)``, which by the PKCS#11 standard promises the
    module that no two threads call it at once; SoftHSM2 then turns its own locking off, and concurrent calls
    fail (``CKR_GENERAL_ERROR``) or crash. So calls are serialized here, one module-wide lock per process;
    a token operation takes well under a millisecond, and one session per token is then all that is needed.
    """

    def __init__(self, path: str) -> None:
        if not Path(path).is_file():
            raise ConfigError(f"the PKCS#11 module {path} does not exist",
                              hint=f"install SoftHSM2 (apt-get install softhsm2) or set {MODULE_ENV} / module= to "
                                   "your HSM vendor's PKCS#11 library")
        try:
            self.lib = pkcs11.lib(path)
        except p11e.PKCS11Error as exc:
            hint = None
            if "softhsm" in path.lower():
                hint = (f"SoftHSM2 reads its configuration from $SOFTHSM2_CONF (now "
                        f"{os.environ.get('SOFTHSM2_CONF') or 'unset: /etc/softhsm/softhsm2.conf'}); its "
                        "directories.tokendir must exist and be writable by this user")
            raise ConfigError(f"the PKCS#11 module {path} could not be loaded or initialized "
                              f"({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})", hint=hint) from None
        self.path = path
        self.lock = threading.RLock()  # re-entrant: a caller holding a session may call the backend again
        self._tokens: dict[str, _TokenState] = {}
        self._last_rescan = 0.0

    def rescan(self) -> None:
        with self.lock:
            # Sessions and logins die with C_Finalize; drop them without closing (their handles are gone).
            self._tokens.clear()
            self.lib.reinitialize()
            self._last_rescan = time.monotonic()

    def labels(self) -> list[str]:
        tokens = (slot.get_token() for slot in self.lib.get_slots(token_present=True))
        return sorted(t.label for t in tokens if t.flags & TokenFlag.TOKEN_INITIALIZED)

    def _lookup(self, label: str) -> _TokenState | None:
        if label not in self._tokens:
            matches = [slot.get_token() for slot in self.lib.get_slots(token_present=True)]
            matches = [t for t in matches if t.label == label and t.flags & TokenFlag.TOKEN_INITIALIZED]
            if len(matches) > 1:
                raise ConfigError(f"{len(matches)} tokens are labelled {label!r} in {self.path}",
                                  hint="give every token its own label")
            if not matches:
                return None
            self._tokens[label] = _TokenState(matches[0])
        return self._tokens[label]

    @contextlib.contextmanager
    def session(self, kms: Pkcs11Kms) -> Iterator:
        """The logged-in session of ``kms.token``, held (with the module) for the duration of one call."""
        for attempt in (1, 2):
            with self.lock:
                state = self._lookup(kms.token)
                if state is not None:
                    self._login(state, kms)
                    try:
                        yield state.session
                    except BaseException as exc:
                        cause = exc if isinstance(exc, p11e.PKCS11Error) else exc.__cause__
                        if isinstance(cause, _LOST_SESSION):
                            self._tokens.pop(kms.token, None)  # the next call opens a session and logs in again
                        raise
                    return
                labels = self.labels()
            if attempt == 1 and time.monotonic() - self._last_rescan > _RESCAN_INTERVAL:
                self.rescan()  # the token may have been created after the module was initialized
                continue
            raise NotFoundError(
                f"no PKCS#11 token labelled {kms.token!r} in {self.path}",
                hint="tokens there: " + (", ".join(repr(label) for label in labels) or "none") + "; create one with "
                     "softhsm2-util --init-token --free --label LABEL (SoftHSM2 finds tokens in the directories."
                     "tokendir of $SOFTHSM2_CONF)")

    @staticmethod
    def _login(state: _TokenState, kms: Pkcs11Kms) -> None:
        if kms._ticket in state.verified:
            return
        pin = kms._pin()
        if state.session is None:
            try:
                state.session = state.token.open(rw=True, user_pin=pin)
                state.pin_digest = _pin_digest(pin)
            except p11e.UserAlreadyLoggedIn:
                # Code outside ppml logged this token in: the process already holds it, the PIN adds nothing.
                state.session = state.token.open(rw=True)
            except (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange):
                raise KeyAccessError(f"wrong PIN for {kms.where}", hint=f"check the PIN source {kms.pin_source}") \
                    from None
            except p11e.PinLocked:
                raise KeyAccessError(f"the user PIN of {kms.where} is locked after too many wrong PINs",
                                     hint="the security officer unlocks it by setting a new user PIN") from None
            except p11e.UserPinNotInitialized:
                raise ConfigError(f"{kms.where} has no user PIN yet",
                                  hint="initialize it: softhsm2-util --init-token ... --pin PIN") from None
            except p11e.PKCS11Error as exc:
                raise KeyAccessError(f"cannot log in to {kms.where} ({type(exc).__name__})") from None
        elif state.pin_digest is not None and not hmac.compare_digest(state.pin_digest, _pin_digest(pin)):
            raise KeyAccessError(f"wrong PIN for {kms.where}",
                                 hint=f"check the PIN source {kms.pin_source}: this process is logged in to the "
                                      "token with another PIN (a PIN changed while the process runs takes effect "
                                      "after a restart)")
        state.verified.add(kms._ticket)


_LIBRARIES: dict[str, _Library] = {}
_LIBRARIES_LOCK = threading.Lock()


def _library(path: str) -> _Library:
    with _LIBRARIES_LOCK:
        if path not in _LIBRARIES:
            _LIBRARIES[path] = _Library(path)
        return _LIBRARIES[path]


def refresh_tokens(module: str | None = None) -> None:
    """Initialize PKCS#11 module ``module`` again, so that tokens created since it was loaded are seen.

    Waits until no call of this process is using the module; logins and sessions are re-established by the
    next call. SoftHSM2 also re-reads ``$SOFTHSM2_CONF`` here. Does nothing when the module is not loaded.
    """
    path = module or default_module()
    with _LIBRARIES_LOCK:
        library = _LIBRARIES.get(path) if path else None
    if library is not None:
        library.rescan()


def _call(fn, what: str):
    try:
        return fn()
    except p11e.PKCS11Error as exc:
        raise KeyAccessError(f"the PKCS#11 module failed {what} ({type(exc).__name__})") from exc


class _Ticket:
    __slots__ = ("__weakref__",)


class Pkcs11Kms(KeyManagementService):
    """Primary keys held in a PKCS#11 token; data keys wrapped inside it.

    Parameters
    ----------
    token
        Label of the token (``softhsm2-util --show-slots`` lists them).
    pin
        Where the user PIN comes from: a secret source read by this process when it first logs in
        (``env:VAR``, ``file:PATH``, ``azure-secret:VAULT/NAME``, as for
        :func:`ppml.keys.settings.read_secret_source`; a literal PIN is refused), or a callable returning the
        PIN (for prompts). Default ``env:PPML_PKCS11_PIN``. Only sources keep the backend picklable.
    module
        Path of the PKCS#11 library; default :func:`default_module` (``$PPML_PKCS11_MODULE``, else SoftHSM2's).
        The library is loaded at the first call, not here.
    """

    name = "pkcs11"

    def __init__(self, token: str, pin: Pin = None, module: str | os.PathLike | None = None) -> None:
        if not isinstance(token, str) or not token.strip():
            raise ConfigError("the pkcs11 key management service needs token= (the token label)",
                              hint="softhsm2-util --show-slots lists the token labels")
        if pin is not None and not isinstance(pin, str) and not callable(pin):
            raise TypeError(f"pin must be a secret source string or a callable, not {type(pin).__name__}")
        self.token = token
        self.module = str(module) if module else default_module()
        self._module_given = str(module) if module else None  # a pickled copy looks for its own default
        self._pin_from = pin
        self._ticket = _Ticket()

    def __repr__(self) -> str:
        return f"Pkcs11Kms(token={self.token!r}, module={self.module!r})"

    def __reduce__(self):
        if callable(self._pin_from):
            raise TypeError("a Pkcs11Kms whose PIN comes from a callable cannot be pickled: give pin= as a secret "
                            "source (env:VAR, file:PATH) that each process reads for itself")
        return (type(self), (self.token, self._pin_from, self._module_given))

    @property
    def where(self) -> str:
        return f"PKCS#11 token {self.token!r}"

    @property
    def pin_source(self) -> str:
        if callable(self._pin_from):
            return "given by the caller"
        return self._pin_from or f"env:{PIN_ENV}"

    def _pin(self) -> str:
        if callable(self._pin_from):
            value = self._pin_from()
        else:
            # Imported here: settings imports the key ring, which imports kms; this backend must stay importable
            # on its own from kms's registry.
            from ppml.keys.settings import read_secret_source

            value = read_secret_source(self.pin_source, what=f"PIN of {self.where}")
        if not value:
            raise KeyAccessError(f"the PIN of {self.where} is empty", hint=f"check the PIN source {self.pin_source}")
        return value

    def _session(self):
        """A context manager giving a logged-in python-pkcs11 session (for this module and its tests)."""
        if not self.module:
            raise ConfigError("no PKCS#11 module found",
                              hint=f"install SoftHSM2 (apt-get install softhsm2) or set {MODULE_ENV} / module= to "
                                   "your HSM vendor's PKCS#11 library")
        return _library(self.module).session(self)

    def key_identifier(self, key_name: str) -> str:
        return f"{self.token}/{key_name}"

    # -- key objects -------------------------------------------------------------------------------

    @staticmethod
    def _check_name(key_name: str) -> str:
        if not isinstance(key_name, str) or not _KEY_NAME.match(key_name):
            raise UsageError(f"invalid key name {key_name!r}",
                             hint="use letters, digits, '-', '_' and '.' (at most 128 characters)")
        return key_name

    @staticmethod
    def _versions(session, key_name: str) -> tuple[dict[str, object], set[str]]:
        """``({version: key object}, retired versions)`` of ``key_name``; objects of other tools are skipped."""
        keys: dict[str, object] = {}
        found = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: key_name,
                                          Attribute.TOKEN: True}))
        for obj in found:
            version = obj[Attribute.ID].decode("ascii", "replace")
            if _VERSION.fullmatch(version) and obj.key_type == KeyType.AES:
                if version in keys:
                    raise ConfigError(f"two key objects labelled {key_name!r} have id {version!r}",
                                      hint="two processes rotated the key at once; destroy one of them with "
                                           "pkcs11-tool --delete-object (data it wrapped is lost)")
                keys[version] = obj
        retired = {obj[Attribute.VALUE].decode("ascii", "replace") for obj in session.get_objects(
            {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: key_name, Attribute.APPLICATION: _TOMBSTONE})}
        return keys, retired

    def _missing(self, session, key_name: str) -> NotFoundError:
        names = sorted({obj[Attribute.LABEL] for obj in session.get_objects(
            {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.TOKEN: True})})
        return NotFoundError(f"no primary key {key_name!r} in {self.where}",
                             hint="keys there: " + (", ".join(names) or "none") + "; create one with "
                                  "'ppml keys init' or Pkcs11Kms.create_key")

    def _info(self, session, key_name: str) -> PrimaryKeyInfo:
        keys, retired = self._versions(session, key_name)
        if not keys:
            raise self._missing(session, key_name)
        versions = tuple(KeyVersionInfo(v, "retired" if v in retired and v not in keys else "enabled", "")
                         for v in sorted(set(keys) | retired, key=int))
        serial = session.token.serial.decode("ascii", "replace").strip()
        return PrimaryKeyInfo(self.name, key_name, max(keys, key=int), versions,
                              {"token": self.token, "token_serial": serial, "module": self.module,
                               "mechanism": "CKM_AES_KEY_WRAP_PAD", "key_identifier": self.key_identifier(key_name)})

    def _generate(self, session, key_name: str, version: str) -> None:
        _call(lambda: session.generate_key(
            KeyType.AES, 256, label=key_name, id=version.encode("ascii"), store=True,
            capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP,
            template={Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False}),
            f"generating key {key_name!r} version {version} in {self.where}")

    def create_key(self, key_name: str = DEFAULT_KEY_NAME) -> PrimaryKeyInfo:
        self._check_name(key_name)
        with self._session() as session:
            keys, retired = self._versions(session, key_name)
            if keys or retired:
                raise AlreadyExistsError(f"primary key {key_name!r} already exists in {self.where}",
                                         hint="rotate it with 'ppml keys rotate' instead")
            self._generate(session, key_name, "1")
            return self._info(session, key_name)

    def rotate_key(self, key_name: str = DEFAULT_KEY_NAME) -> PrimaryKeyInfo:
        with self._session() as session:
            keys, retired = self._versions(session, key_name)
            if not keys:
                raise self._missing(session, key_name)
            self._generate(session, key_name, str(max(int(v) for v in (*keys, *retired)) + 1))
            return self._info(session, key_name)

    def describe_key(self, key_name: str = DEFAULT_KEY_NAME) -> PrimaryKeyInfo:
        with self._session() as session:
            return self._info(session, key_name)

    def list_keys(self) -> list[PrimaryKeyInfo]:
        with self._session() as session:
            names = {obj[Attribute.LABEL] for obj in session.get_objects(
                {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES, Attribute.TOKEN: True})}
            infos = []
            for key_name in sorted(names):
                with contextlib.suppress(NotFoundError):  # AES keys of other tools, without numeric ids
                    infos.append(self._info(session, key_name))
            return infos

    def retire_version(self, key_name: str, version: str) -> PrimaryKeyInfo:
        """Destroy one version's key object, leaving a tombstone. Callers check first that no file still uses it."""
        with self._session() as session:
            keys, _ = self._versions(session, key_name)
            if version not in keys:
                raise NotFoundError(f"primary key {key_name!r} has no version {version} in {self.where}",
                                    hint="versions: " + (", ".join(sorted(keys, key=int)) or "none"))
            if version == max(keys, key=int):
                raise UsageError(f"version {version} is the current version of {key_name!r}",
                                 hint="rotate the key first, then retire the old version")
            # The tombstone first: should destroying fail, the version is still there and marked.
            _call(lambda: session.create_object({
                Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True, Attribute.PRIVATE: True,
                Attribute.LABEL: key_name, Attribute.APPLICATION: _TOMBSTONE, Attribute.VALUE: version.encode()}),
                f"marking {key_name!r} version {version} retired")
            _call(keys[version].destroy, f"destroying {key_name!r} version {version}")
            return self._info(session, key_name)

    def _warn_if_exportable(self, key, reference: str) -> None:
        attrs = key.get_attributes([Attribute.SENSITIVE, Attribute.EXTRACTABLE])
        if not attrs[Attribute.SENSITIVE] or attrs[Attribute.EXTRACTABLE]:
            warnings.warn(f"the primary key {reference} in {self.where} can be read out of the token "
                          "(CKA_SENSITIVE false or CKA_EXTRACTABLE true): the HSM does not protect it",
                          PpmlInsecureWarning, stacklevel=3)

    # -- wrapping ----------------------------------------------------------------------------------

    def wrap(self, key: DataKey, key_name: str = DEFAULT_KEY_NAME) -> WrappedKey:
        material = key.unsafe_material()
        if len(material) % 8:
            raise ValueError(f"the pkcs11 backend wraps data keys whose length is a multiple of 8 bytes (ppml's are "
                             f"32), not {len(material)}: SoftHSM2 zero-pads other lengths, which is not RFC 5649")
        with self._session() as session:
            keys, _ = self._versions(session, key_name)
            if not keys:
                raise self._missing(session, key_name)
            version = max(keys, key=int)
            reference = f"{self.name}:{self.key_identifier(key_name)}#v{version}"
            self._warn_if_exportable(keys[version], reference)
            transient = _call(lambda: session.create_object({
                Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
                Attribute.TOKEN: False, Attribute.PRIVATE: True, Attribute.SENSITIVE: False,
                Attribute.EXTRACTABLE: True, Attribute.VALUE: material}), f"importing a data key into {self.where}")
            try:
                blob = _call(lambda: keys[version].wrap_key(transient, mechanism=Mechanism.AES_KEY_WRAP_PAD),
                             f"wrapping with {reference}")
            finally:
                transient.destroy()
        return WrappedKey(self.name, self.key_identifier(key_name), version, _FORMAT + blob)

    def unwrap(self, wrapped: WrappedKey) -> DataKey:
        reference = wrapped.reference
        token, _, key_name = wrapped.key.rpartition("/")
        if wrapped.kms != self.name:
            raise KeyAccessError(f"{reference} was not wrapped by a PKCS#11 token")
        if token != self.token:
            raise KeyAccessError(f"{reference} was wrapped in PKCS#11 token {token!r}, but this backend uses "
                                 f"token {self.token!r}", hint=f"configure a pkcs11 backend with token={token!r}")
        blob = wrapped.wrapped
        if blob[:1] != _FORMAT or len(blob) < 1 + 16 or (len(blob) - 1) % 8:
            raise KeyAccessError(f"the wrapped key for {reference} is malformed")
        with self._session() as session:
            keys, retired = self._versions(session, key_name)
            primary = keys.get(wrapped.version)
            if primary is None:
                if wrapped.version in retired:
                    raise KeyAccessError(f"primary key {reference} has been retired in {self.where}",
                                         hint="its key object was destroyed; data still wrapped by it cannot be "
                                              "opened unless the token is restored from a backup")
                raise KeyAccessError(f"primary key {reference} does not exist in {self.where}",
                                     hint="versions there: " + (", ".join(sorted(keys, key=int)) or "none"))
            try:
                obj = primary.unwrap_key(
                    ObjectClass.SECRET_KEY, KeyType.GENERIC_SECRET, blob[1:], mechanism=Mechanism.AES_KEY_WRAP_PAD,
                    template={Attribute.TOKEN: False, Attribute.PRIVATE: True, Attribute.SENSITIVE: False,
                              Attribute.EXTRACTABLE: True})
            except _TAMPER_ERRORS:
                raise KeyAccessError(f"{self.where} could not unwrap the data key with {reference}",
                                     hint="the wrapped key was modified, or was wrapped by another key") from None
            except p11e.PKCS11Error as exc:
                raise KeyAccessError(f"{self.where} failed unwrapping with {reference} ({type(exc).__name__})") \
                    from exc
            try:
                return DataKey(obj[Attribute.VALUE])
            finally:
                obj.destroy()
