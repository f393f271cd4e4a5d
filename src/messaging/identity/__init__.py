"""Identity: phone + OTP login, JWT access tokens bound to a device."""
