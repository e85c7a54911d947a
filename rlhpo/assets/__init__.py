"""Shipped artefacts (package data): the meta-dataset, the policy, and ASSETS.md on how they were made."""
