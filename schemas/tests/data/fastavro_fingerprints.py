#!/usr/bin/env python3
"""Writes fastavro_fingerprints.tsv: every schema's single-object fingerprint
as fastavro (an implementation independent of this project) computes it.

    pip install fastavro==1.13.1
    python3 schemas/tests/data/fastavro_fingerprints.py > schemas/tests/data/fastavro_fingerprints.tsv

Columns: the schema's path under schemas/, fastavro's Parsing Canonical Form,
and the 8 header bytes (the CRC-64-AVRO fingerprint, little-endian) in hex.
fastavro's `fingerprint(..., "CRC-64-AVRO")` already returns those bytes in
that order (its "null" gives 8a8f25cce724dd63, the spec's 0x63DD24E7CC258F8A).
"""
import glob
import json
import os

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
print(f"# fastavro {fastavro.__version__}: path\tcanonical form\tfingerprint (header bytes, hex)")
for path in sorted(glob.glob(os.path.join(root, "avro", "*.avsc"))) + sorted(
    glob.glob(os.path.join(root, "avro", "history", "*.avsc"))
):
    with open(path) as f:
        pcf = to_parsing_canonical_form(json.load(f))
    print(f"{os.path.relpath(path, root)}\t{pcf}\t{fingerprint(pcf, 'CRC-64-AVRO')}")
