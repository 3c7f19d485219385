"""Single sign-on with the organization's own identity provider (OpenID Connect, SAML 2.0)."""
