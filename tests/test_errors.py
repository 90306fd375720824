"""Bad input gets a clear error and changes nothing."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import grpc
import pytest

from daxfs.client import Client, rpc
from daxfs.proto import daxfs_pb2 as pb
from daxfs.proto import daxfs_pb2_grpc as pb_grpc
from daxfs.server.volume import format_volume
from daxfs.shared import errors
from daxfs.testing import ServerProc, Volume, run_server


def test_server_refuses_a_region_with_a_bad_superblock(volume: Volume) -> None:
    with open(volume.region, "r+b") as f:
        f.write(b"NOTDAXFS")
    out = run_server(volume)
    assert out.returncode != 0
    assert "bad magic" in out.stderr
    assert "Traceback" not in out.stderr
    # The metadata records the region: the way back keeps the files, mkfs is not it.
    assert f"daxfs fsck --repair --region {volume.region} --meta {volume.meta}" in out.stderr
    assert "do not run mkfs" in out.stderr


def test_server_refuses_a_corrupt_superblock_checksum(volume: Volume) -> None:
    with open(volume.region, "r+b") as f:
        f.seek(40)
        f.write(b"\x00\x20")  # block size field, without fixing the CRC
    out = run_server(volume)
    assert out.returncode != 0 and "checksum" in out.stderr
    assert "daxfs fsck --repair" in out.stderr


def test_a_bad_superblock_without_metadata_is_left_to_mkfs(volume: Volume) -> None:
    with open(volume.region, "r+b") as f:
        f.write(b"NOTDAXFS")
    os.unlink(volume.meta)
    out = run_server(volume, "--meta", volume.meta + ".elsewhere")
    assert out.returncode != 0 and "does not exist" in out.stderr
    from daxfs.server.volume import read_volume_superblock

    with pytest.raises(errors.SuperblockDamaged, match="daxfs mkfs") as caught:
        read_volume_superblock(volume.region, volume.meta)
    assert "fsck --repair" not in str(caught.value)


def test_server_refuses_metadata_of_another_region(volume: Volume, workdir: Path) -> None:
    other = workdir / "other"
    format_volume(str(other), str(other) + ".meta", 64 * 1024 * 1024)
    out = run_server(volume, "--meta", str(other) + ".meta")
    assert out.returncode != 0
    assert "belongs to region" in out.stderr


def test_server_refuses_a_size_that_differs_and_never_reformats(volume: Volume) -> None:
    before = Path(volume.meta).read_bytes()
    out = run_server(volume, "--size", "128M")
    assert out.returncode != 0 and "differs from the existing region" in out.stderr
    assert Path(volume.meta).read_bytes() == before


def test_server_refuses_a_truncated_region(volume: Volume) -> None:
    import os

    os.truncate(volume.region, 64 * 1024 * 1024)
    out = run_server(volume)
    assert out.returncode != 0 and "truncated" in out.stderr


def test_server_refuses_a_missing_metadata_file(volume: Volume) -> None:
    out = run_server(volume, "--meta", str(volume.dir / "nope.meta"))
    assert out.returncode != 0 and "does not exist" in out.stderr


@pytest.mark.parametrize(
    ("path", "exc"),
    [
        ("relative", errors.InvalidArgument),
        ("/a/../b", errors.InvalidArgument),
        ("/" + "n" * 256, errors.NameTooLong),
        ("/" + "é" * 128, errors.NameTooLong),  # 256 bytes of UTF-8
        ("/a\0b", errors.InvalidArgument),
        ("/missing/file", errors.NotFound),
    ],
)
def test_bad_paths_are_refused(client: Client, path: str, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        client.open(path, "wb")
    assert client.listdir("/") == []


def test_a_name_with_a_slash_is_refused(client: Client) -> None:
    with pytest.raises(errors.InvalidArgument, match="contains '/'"):
        client.server.call(
            rpc.LOOKUP, pb.LookupRequest(caller=client.server.caller, parent="/", name="a/b")
        )


def test_name_of_255_bytes_is_fine(client: Client) -> None:
    with client.open("/" + "n" * 255, "wb"):
        pass
    client.unlink("/" + "n" * 255)


@pytest.mark.parametrize(
    ("offset", "length", "exc"),
    [
        (-1, 10, errors.InvalidArgument),
        (0, -5, errors.InvalidArgument),
        ((1 << 63) - 10, 100, errors.FileTooBig),
    ],
)
def test_bad_offsets_are_refused_over_rpc(
    client: Client, offset: int, length: int, exc: type[Exception]
) -> None:
    free = client.statfs().blocks_free
    with client.open("/f", "wb") as f:
        for mode in (pb.LAYOUT_MODE_READ, pb.LAYOUT_MODE_WRITE):
            with pytest.raises(exc):
                client.server.call(
                    rpc.GET_LAYOUT,
                    pb.GetLayoutRequest(
                        caller=client.server.caller,
                        handle=f.handle,
                        offset=offset,
                        length=length,
                        mode=mode,
                    ),
                )
        with pytest.raises(exc):
            client.server.call(
                rpc.READ,
                pb.ReadRequest(
                    caller=client.server.caller, handle=f.handle, offset=offset, length=length
                ),
            )
    assert client.statfs().blocks_free == free
    client.unlink("/f")


def test_status_codes_and_errno_on_the_wire(server: ServerProc) -> None:
    with grpc.insecure_channel(server.address) as ch:
        stub = pb_grpc.DaxfsStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetAttr(pb.GetAttrRequest(path="/nope"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert ("daxfs-errno", "2") in info.value.trailing_metadata()
        with pytest.raises(grpc.RpcError) as info:  # a session nobody opened
            stub.GetLayout(
                pb.GetLayoutRequest(
                    caller=pb.Caller(client_id=12345), handle=12345, offset=0, length=1, mode=1
                )
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert ("daxfs-errno", str(errno.ESTALE)) in info.value.trailing_metadata()
        with pytest.raises(grpc.RpcError) as info:  # no session at all
            stub.GetLayout(pb.GetLayoutRequest(handle=12345, offset=0, length=1, mode=1))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "needs a session" in (info.value.details() or "")
        with pytest.raises(grpc.RpcError) as info:
            stub.GetLayout(pb.GetLayoutRequest(handle=1, offset=0, length=1, mode=0))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_handle_and_stale_lease(client: Client) -> None:
    with pytest.raises(errors.StaleHandle):
        client.server.call(rpc.RELEASE, pb.ReleaseRequest(caller=client.server.caller, handle=999))
    with pytest.raises(errors.StaleHandle):
        client.server.call(
            rpc.RETURN_LAYOUT, pb.ReturnLayoutRequest(caller=client.server.caller, lease_id=999)
        )


def test_unreachable_server_is_a_clear_error(workdir: Path) -> None:
    from daxfs.client import connect

    with pytest.raises(errors.Unavailable, match="unreachable"):
        connect(f"unix:{workdir}/nothing.sock", timeout=2)


def test_wrong_region_path_is_a_clear_error(server: ServerProc, workdir: Path) -> None:
    from daxfs.client import connect

    other = workdir / "other"
    format_volume(str(other), str(other) + ".meta", 64 * 1024 * 1024)
    with pytest.raises(errors.FormatError, match="pass the right region path"):
        connect(server.address, region_path=str(other))
