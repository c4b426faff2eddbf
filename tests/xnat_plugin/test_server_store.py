"""Storage of the local XNAT server: transactions, persistence, PostgreSQL."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest
import requests

from qa_core.errors import ConfigurationError
from xnat_plugin.server.auth import hash_password, verify_password
from xnat_plugin.server.store import ObjectRow, Store, StoreError, now_text

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _pg_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def _assessor(label: str, parent: int | None = None) -> ObjectRow:
    now = now_text()
    return ObjectRow(pk=0, id=f"X_{label}", kind="assessor", xsi_type="cbctqa:qaAssessmentData",
                     project="P", label=label, parent_pk=parent,
                     fields={"status": "complete", "parotid_score": "3.5"}, insert_date=now,
                     last_modified=now)


def test_failed_transaction_leaves_no_half_assessor(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        with pytest.raises(RuntimeError, match="crash"), store.transaction() as tx:
            tx.insert_object(_assessor("A1"))
            tx.next_id("experiment")
            raise RuntimeError("crash between writes")
        with store.transaction() as tx:
            assert tx.objects() == []
            assert tx.next_id("experiment") == 1
            pk = tx.insert_object(_assessor("A2"))
        with store.transaction() as tx:
            back = tx.object(pk)
        assert back is not None and back.fields == {"parotid_score": "3.5", "status": "complete"}
    finally:
        store.close()


def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with store.transaction() as tx:
        pk = tx.insert_object(_assessor("A1"))
    store.close()
    reopened = Store(tmp_path)
    try:
        with reopened.transaction() as tx:
            assert tx.object(pk) is not None
    finally:
        reopened.close()


def test_bad_database_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="postgresql://"):
        Store(tmp_path, "mysql://root@localhost/x")
    with pytest.raises(StoreError, match="PostgreSQL"):
        Store(tmp_path, "postgresql://postgres@127.0.0.1:1/none")


def test_password_hashing() -> None:
    stored = hash_password("s3cret", n=2**10)
    assert "s3cret" not in stored
    assert verify_password("s3cret", stored)
    assert not verify_password("S3cret", stored)
    assert not verify_password("s3cret", "plain-text")


@pytest.mark.skipif(not _pg_reachable(), reason="PostgreSQL is not reachable at 127.0.0.1:5432")
def test_server_on_postgresql(xnat_server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    try:
        server = xnat_server_factory(database_url=url, data_dir=tmp_path / "pg")
        auth = (server.user, server.password)
        assert requests.put(f"{server.url}/data/projects/PG", auth=auth, timeout=10).status_code == 201
        requests.put(f"{server.url}/data/projects/PG/subjects/S", auth=auth, timeout=10)
        requests.put(f"{server.url}/data/projects/PG/subjects/S/experiments/E", auth=auth,
                     params={"xsiType": "xnat:ctSessionData"}, timeout=10)
        made = requests.put(f"{server.url}/data/projects/PG/subjects/S/experiments/E/assessors/A",
                            auth=auth, params={"xsiType": "cbctqa:qaAssessmentData",
                                               "cbctqa:qaAssessmentData/status": "complete"},
                            timeout=10)
        assert made.status_code == 201
        server.restart()
        rows = requests.get(f"{server.url}/data/experiments", auth=auth, timeout=10, params={
            "xsiType": "cbctqa:qaAssessmentData", "format": "json",
            "columns": "ID,label,cbctqa:qaAssessmentData/status"}).json()["ResultSet"]["Result"]
        assert [(r["label"], r["cbctqa:qaassessmentdata/status"]) for r in rows] == [("A", "complete")]
        server.stop()
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
