"""Who is calling (identity: OIDC bearer tokens, personal API tokens, or the local user) and what they may do."""
