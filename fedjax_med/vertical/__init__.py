"""Vertical federated learning: one patient's features split across parties.

Each party holds some feature columns of the same patients under its own
patient identifiers, and one party (the label holder) holds the labels. The
parties align their patients by private set intersection (`psi`), then train
a logistic regression over all columns with secret-shared logits
(`secret_sharing`) or Paillier encryption (`paillier`). `plaintext` trains
the centralized model on the joined data, the reference both protocols are
tested against.
"""
