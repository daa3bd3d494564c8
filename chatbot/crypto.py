"""Encryption of secrets stored in the database (Fernet; several keys allow rotation)."""
from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from config import comma_list


class SecretDecryptionError(Exception):
    """A stored secret cannot be decrypted with any configured key."""


class FieldCipher:
    """Encrypts with the first key of FIELD_ENCRYPTION_KEY, decrypts with any of them."""

    def __init__(self, keys: str):
        self._fernet = MultiFernet([Fernet(key) for key in comma_list(keys)])

    def encrypt(self, plaintext: str) -> str:
        """Return the token to store for a plaintext secret."""
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        """Return the plaintext of a stored token."""
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise SecretDecryptionError(
                "stored secret does not decrypt with FIELD_ENCRYPTION_KEY (was the key changed?)"
            ) from exc

    def rotate(self, token: str) -> str:
        """Re-encrypt a stored token under the first (newest) key."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken as exc:
            raise SecretDecryptionError("stored secret does not decrypt with any configured key") from exc
