"""The database: connection and migrations, the credit ledger, jobs. Every query lives here."""
