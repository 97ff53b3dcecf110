"""Per-slice reads of stored .npz volumes: unpacked once, memory-mapped, refreshed on rewrite."""

from __future__ import annotations

import os

import numpy as np
import pytest

from jobs.slices import npz_member, npz_small


def write(path, labels, uids):
    np.savez_compressed(path, labels=labels, sop_instance_uids=np.array(uids))


def test_a_member_reads_back_equal_and_is_memory_mapped(isolated_storage, tmp_path):
    labels = np.random.default_rng(0).integers(0, 3, size=(5, 8, 9), dtype=np.uint8)
    path = tmp_path / "labels.npz"
    write(path, labels, [f"1.2.{k}" for k in range(5)])

    mapped = npz_member(path, "labels")
    assert isinstance(mapped, np.memmap)
    np.testing.assert_array_equal(mapped[3], labels[3])
    assert list(npz_small(path, "sop_instance_uids")) == [f"1.2.{k}" for k in range(5)]
    cached = list((isolated_storage / "cache" / "npz").rglob("*.npy"))
    assert len(cached) == 1
    assert not list((isolated_storage / "cache" / "npz").rglob("*.partial"))


def test_a_rewritten_archive_is_not_served_from_the_old_copy(isolated_storage, tmp_path):
    path = tmp_path / "labels.npz"
    write(path, np.zeros((2, 4, 4), np.uint8), ["a", "b"])
    assert int(npz_member(path, "labels").max()) == 0
    write(path, np.full((2, 4, 4), 2, np.uint8), ["a", "b"])
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert int(npz_member(path, "labels").max()) == 2


def test_a_missing_member_is_a_key_error(isolated_storage, tmp_path):
    path = tmp_path / "labels.npz"
    write(path, np.zeros((1, 2, 2), np.uint8), ["a"])
    with pytest.raises(KeyError, match="no 'lung' array"):
        npz_member(path, "lung")
    with pytest.raises(KeyError, match="no 'lung' array"):
        npz_small(path, "lung")
