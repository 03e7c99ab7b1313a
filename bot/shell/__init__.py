"""The console front-end: a chat in the terminal (Hubot's shell adapter in spirit), and the CLI's replies."""
