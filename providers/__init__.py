"""Protocol code for the hosted video APIs: no chat, credit or storage logic lives here."""
