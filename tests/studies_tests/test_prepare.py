"""Preparing files on helper processes: the same results as preparing them here, in the order
given, whatever the helpers do (die, or never start)."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from studies.deidentify import Deidentifier
from studies.services import prepare, storage
from studies.services.prepare import FileOutcome, Prepared, Preparer
from tests.dicom_builders import ct_series_bytes, ct_slice, to_bytes

DEIDENTIFIER = Deidentifier(b"prepare-test-secret-0123456789")


def mixed_items() -> list[tuple[str, bytes]]:
    """CT slices with a non-DICOM file and a non-CT instance among them."""
    slices = ct_series_bytes(7)
    not_ct = ct_slice(study_uid=generate_uid(), series_uid=generate_uid(), index=0)
    not_ct.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    files = [*slices[:3], b"not a DICOM file at all", *slices[3:5], to_bytes(not_ct), *slices[5:]]
    return [(f"file {n}", data) for n, data in enumerate(files)]


def comparable(item: Prepared | FileOutcome) -> tuple:
    if isinstance(item, FileOutcome):
        return ("outcome", item.name, item.status, item.reason, item.sent)
    item.resolve_digest()
    data = item.data
    if item.write_soon is not None:  # written by a helper beside its place in the store
        assert not data
        data = item.write_soon.result().read_bytes()
    return ("prepared", item.name, data, item.fields, item.hierarchy, item.key, item.sent)


def written_by_helpers(out: list[Prepared | FileOutcome], store: Path) -> list[Prepared]:
    """The prepared files a helper wrote: each beside its place under ``store``."""
    written = [i for i in out if isinstance(i, Prepared) and i.write_soon is not None]
    for item in written:
        temp = item.write_soon.result()
        assert temp.parent == store / Path(item.relpath).parent
        assert temp.name.startswith(".incoming-")
    return written


def prepared_here(items: list[tuple[str, bytes]]) -> list[tuple]:
    return [comparable(item) for item in Preparer(DEIDENTIFIER, 0).prepare_all(items)]


def through_one_helper(items: list[tuple[str, bytes]], store: Path) -> list[prepare._Slot]:
    """``items`` sent to one helper writing under ``store``, each answer taken in turn (a file
    it could not prepare or write is prepared here)."""
    preparer = Preparer(DEIDENTIFIER, 1, write_to=store)
    helper = prepare._Helper()
    try:
        slots = [prepare._Slot(item) for item in items]
        assert all(helper.send(slot, pickle.dumps(DEIDENTIFIER), str(store)) for slot in slots)
        while helper.waiting:
            helper.receive(lambda item: preparer.here(*item), block=True)
    finally:
        helper.close()
    return slots


@pytest.fixture
def helpers(monkeypatch):
    """This process's helpers, none left over from another test; stopped after the test."""
    fresh = prepare._Helpers()
    monkeypatch.setattr(prepare, "_helpers", fresh)
    yield fresh
    for helper in fresh._idle:
        helper.close()


def test_helpers_prepare_what_this_process_prepares_in_the_order_given(
    helpers, monkeypatch, tmp_path
):
    items = mixed_items()
    expected = prepared_here(items)
    store = tmp_path / "store"
    for item in Preparer(DEIDENTIFIER, 1, write_to=store).prepare_all(items):  # helper loads
        if isinstance(item, Prepared):
            item.discard_write()
    real_prepare = prepare.prepare

    def slowly(*args):  # this process, slowed down: the helper takes files while it works
        time.sleep(0.05)
        return real_prepare(*args)

    monkeypatch.setattr(prepare, "prepare", slowly)
    out = list(Preparer(DEIDENTIFIER, 1, write_to=store).prepare_all(items))
    # A file prepared on a helper comes back with its digest made and its bytes on disk beside
    # their place in the store; one prepared here has its digest still being made on an I/O
    # thread, and its bytes with it.
    from_helpers = written_by_helpers(out, store)
    assert len(from_helpers) >= 2
    assert all(i.digest_soon is None for i in from_helpers)
    assert all(i.data for i in out if isinstance(i, Prepared) and i not in from_helpers)
    assert [comparable(i) for i in out] == expected
    refused = [i for i in out if isinstance(i, FileOutcome)]
    assert [i.name for i in refused] == ["file 3", "file 6"]
    assert "not CT Image Storage" in refused[1].reason
    assert refused[1].sent.sop_class_uid == "1.2.840.10008.5.1.4.1.1.4"
    # The helper is kept for the next call, and no file is left on the scratch space.
    assert len(helpers._idle) == 1 and helpers._idle[0].alive()
    scratch = prepare._scratch_folder()
    assert not list(scratch.iterdir())
    assert scratch.stat().st_mode & 0o777 == 0o700  # files from before de-identification


def test_files_a_helper_wrote_are_flushed_to_disk_here_before_they_count_as_written(
    helpers, fsynced_paths, tmp_path
):
    # A helper writes and moves on to its next file; this process's I/O threads make each
    # file durable (fsync) and only then is its write done: the rename into place waits on it.
    items = [(f"file {n}", data) for n, data in enumerate(ct_series_bytes(3))]
    slots = through_one_helper(items, tmp_path / "store")
    temps = [slot.result.write_soon.result() for slot in slots]
    assert sorted(fsynced_paths) == sorted(str(temp) for temp in temps)
    for slot, temp in zip(slots, temps, strict=True):
        slot.result.discard_write()
        assert not temp.exists()


def test_a_file_that_cannot_be_flushed_is_removed_and_its_write_fails(monkeypatch, tmp_path):
    temp = storage.write_temp_next_to(tmp_path / "a" / "final.dcm", b"data", durable=False)

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(storage.os, "fsync", failing_fsync)
    write = storage.flush_soon(temp)
    with pytest.raises(OSError, match="Input/output error"):
        write.result()
    assert not temp.exists()
    storage.discard_temps([write])  # a failed write has nothing left to remove


def test_a_single_file_is_prepared_here_without_starting_helpers(helpers, tmp_path):
    items = mixed_items()[:1]
    out = list(Preparer(DEIDENTIFIER, 1, write_to=tmp_path).prepare_all(items))
    assert [comparable(i) for i in out] == prepared_here(items)
    assert helpers._idle == []


def test_files_whose_helper_died_are_prepared_here(helpers, monkeypatch, caplog, tmp_path):
    items = mixed_items()
    real_send = prepare._Helper.send
    sent = []

    def send_then_die(self, slot, pickled, write_to):
        ok = real_send(self, slot, pickled, write_to)
        sent.append(ok)
        if len(sent) == 2:  # two files with it: it dies before answering
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        return ok

    monkeypatch.setattr(prepare._Helper, "send", send_then_die)
    with caplog.at_level(logging.WARNING, logger="studies.services.prepare"):
        out = list(Preparer(DEIDENTIFIER, 1, write_to=tmp_path).prepare_all(items))
    assert "prepared by the caller" in caplog.text
    assert sent[:2] == [True, True]
    assert [comparable(i) for i in out] == prepared_here(items)
    # The dead helper is not kept; the next call starts a working one.
    assert helpers._idle == []
    monkeypatch.setattr(prepare._Helper, "send", real_send)
    again = list(Preparer(DEIDENTIFIER, 1, write_to=tmp_path).prepare_all(items))
    assert [comparable(i) for i in again] == prepared_here(items)
    assert len(helpers._idle) == 1


def test_without_helpers_every_file_is_prepared_here(helpers, monkeypatch, caplog, tmp_path):
    def cannot_start():
        raise OSError("no semaphores on this system")

    monkeypatch.setattr(prepare, "_Helper", cannot_start)
    items = mixed_items()
    with caplog.at_level(logging.WARNING, logger="studies.services.prepare"):
        out = list(Preparer(DEIDENTIFIER, 1, write_to=tmp_path).prepare_all(items))
    assert [comparable(i) for i in out] == prepared_here(items)
    assert "no helper processes (no semaphores on this system)" in caplog.text


def test_a_file_the_helper_has_not_started_is_taken_back(helpers, tmp_path):
    items = mixed_items()[:2]
    expected = prepared_here(items)
    preparer = Preparer(DEIDENTIFIER, 1, write_to=tmp_path)
    helper = prepare._Helper()
    os.kill(helper.process.pid, signal.SIGSTOP)  # it cannot claim anything yet
    try:
        slots = [prepare._Slot(item) for item in items]
        assert all(helper.send(slot, pickle.dumps(DEIDENTIFIER), str(tmp_path)) for slot in slots)
        assert helper.take_back(lambda item: preparer.here(*item))
        assert slots[1].result is not None and slots[0].result is None
        assert not os.path.exists(slots[1].path)
    finally:
        os.kill(helper.process.pid, signal.SIGCONT)
    while helper.waiting:  # the first is prepared there; for the second it answers "gone"
        helper.receive(lambda item: preparer.here(*item), block=True)
    assert [comparable(slot.result) for slot in slots] == expected
    assert slots[0].result.digest_soon is None  # made by the helper
    assert not [p for slot in slots for p in slot.files() if os.path.exists(p)]
    helper.close()
    assert not helper.alive()


def test_the_warm_up_file_takes_every_step_of_a_real_slice():
    item = prepare.prepare("warm-up", prepare.warm_up_file(), DEIDENTIFIER)
    assert isinstance(item, Prepared)
    assert item.key is not None and item.key.original_patient_id == "WARM-UP"
    assert item.fields["rows"] == 16 and item.fields["pixel_data_length"] == 512


def test_a_concurrent_call_gets_the_helpers_left_and_no_more(helpers):
    first = helpers.borrow(1)
    assert len(first) == 1
    assert helpers.borrow(1) == []  # the one helper is lent: this call prepares here
    helpers.give_back(first)
    again = helpers.borrow(1)
    assert again == first
    helpers.give_back(again)


def test_without_scratch_space_files_are_prepared_here_and_the_helper_kept(
    helpers, monkeypatch, tmp_path
):
    items = mixed_items()
    expected = prepared_here(items)
    monkeypatch.setattr(prepare, "_scratch_folder", lambda: tmp_path / "gone")  # every write fails
    out = list(Preparer(DEIDENTIFIER, 1, write_to=tmp_path).prepare_all(items))
    assert all(i.digest_soon is not None for i in out if isinstance(i, Prepared))  # all here
    assert [comparable(i) for i in out] == expected
    assert len(helpers._idle) == 1 and helpers._idle[0].alive()


def test_files_helpers_wrote_for_a_call_stopped_early_are_removed(helpers, monkeypatch, tmp_path):
    items = [(f"file {n}", data) for n, data in enumerate(ct_series_bytes(8))]
    store = tmp_path / "store"
    list(Preparer(DEIDENTIFIER, 1, write_to=tmp_path / "warm-up").prepare_all(items[:2]))
    real_prepare = prepare.prepare

    def slowly(*args):  # the helper gets ahead of this process
        time.sleep(0.05)
        return real_prepare(*args)

    monkeypatch.setattr(prepare, "prepare", slowly)
    calls = Preparer(DEIDENTIFIER, 1, write_to=store).prepare_all(items)
    # The helper has the first two files; while this process prepares the third, both come
    # back written, and the first is handed out.
    taken = [next(calls)]
    assert taken[0].write_soon is not None
    calls.close()  # the caller stops (an error on its side): the rest is never stored
    kept = {i.write_soon.result() for i in taken if i.write_soon is not None}
    assert set(store.rglob("*.part")) == kept  # only the files handed out remain
    assert helpers._idle and not helpers._idle[0].waiting


def test_a_helper_sends_back_the_bytes_of_a_file_already_in_its_place(helpers, tmp_path):
    items = [(f"file {n}", data) for n, data in enumerate(ct_series_bytes(2))]
    store = tmp_path / "store"
    expected = prepared_here(items)
    for item in Preparer(DEIDENTIFIER, 0).prepare_all(items):  # both already stored
        (store / item.relpath).parent.mkdir(parents=True, exist_ok=True)
        (store / item.relpath).write_bytes(item.data)
    slots = through_one_helper(items, store)
    assert all(slot.result.write_soon is None and slot.result.data for slot in slots)
    assert [comparable(slot.result) for slot in slots] == expected
    assert list(store.rglob("*.part")) == []


def test_a_file_the_helper_cannot_write_is_prepared_here(helpers, tmp_path):
    items = [(f"file {n}", data) for n, data in enumerate(ct_series_bytes(2))]
    expected = prepared_here(items)
    not_a_folder = tmp_path / "store"
    not_a_folder.write_bytes(b"")  # the helper's writes under it fail
    slots = through_one_helper(items, not_a_folder)
    assert all(slot.result.write_soon is None and slot.result.data for slot in slots)
    assert [comparable(slot.result) for slot in slots] == expected
