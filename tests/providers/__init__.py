"""Providers that exist only in the tests, plugged in through SIGNBACK_PROVIDER_MODULES."""
