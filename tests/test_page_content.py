"""Memory.page_content: an array('Q') of tokens until a page holds real bytes, then a list."""

from array import array

from samepage import Machine
from samepage.mm.content import PAGE_SIZE, token_bytes


def merged(m):
    return m.sysfs_read("pages_shared"), m.sysfs_read("pages_sharing")


def test_tokens_stay_in_an_array_and_big_tokens_round_trip():
    m = Machine()
    p = m.spawn("a")
    r = p.mmap(8, name="r")
    big = (1 << 64) - 1
    p.fill(r, [big, 1 << 40, 1 << 63, 7, big, 1 << 40, 0, 3])
    assert m.mem.page_content.__class__ is array and m.mem.page_content.typecode == "Q"
    assert [p.read(r, i) for i in range(8)] == [big, 1 << 40, 1 << 63, 7, big, 1 << 40, 0, 3]
    p.madvise(r, "mergeable")
    m.sysfs_write("run", 1)
    m.run_full_scans(3)
    assert merged(m) == (2, 2)
    assert m.mem.page_content.__class__ is array


def test_first_bytes_page_turns_it_into_a_list_and_merging_goes_on():
    m = Machine()
    p = m.spawn("a")
    r = p.mmap(6, name="r")
    p.fill(r, [5, 5, 9, 9, 1 << 50, 1 << 50])
    p.madvise(r, "mergeable")
    m.sysfs_write("run", 1)
    m.run_full_scans(3)
    assert merged(m) == (3, 3)
    data = bytes(range(256)) * (PAGE_SIZE // 256)
    p.write(r, [0, 1], data)               # unique bytes, twice: a new pair to merge
    p.write(r, [2], token_bytes(9))         # bytes that spell a token stay a token
    pc = m.mem.page_content
    assert pc.__class__ is list
    assert p.read(r, 0) == data and p.read(r, 2) == 9 and p.read(r, 4) == 1 << 50
    m.run_full_scans(3)
    # the pages holding 5 now hold the bytes: their node is gone, one for the bytes came
    assert merged(m) == (3, 3) and m.sysfs_read("pages_unshared") == 0
    vma = p.mm.vma_by_name("r")
    assert vma.pte[0] == vma.pte[1] and m.mem.page_content[vma.pte[0]] == data
    # a bytes page copied on write keeps its bytes
    child = p.fork("b")
    p.write(r, [3], 11)
    assert child.read(r.name, 0) == data and child.read(r.name, 3) == 9
