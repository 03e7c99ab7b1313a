"""animabot: still image + prompt in, five-second video out, paid with community credits."""
