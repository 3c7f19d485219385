"""Second factors: authenticator apps (TOTP), security keys and passkeys (WebAuthn), recovery codes."""
