"""What every verb runs on: where units of work run (here or on Ray), the output folder's
rules (manifest, resume, locking, what --overwrite may delete), recorded hashes, and progress
bars."""
