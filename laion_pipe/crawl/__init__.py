"""Reading inputs: Common Crawl crawl ids to file lists, WAT / WARC files to pages with images, and URL
lists (urllist.py tells formats apart and cuts lists into partitions, listread.py reads them)."""
from .pages import BadRecord, PageImages
from .paths import crawl_files, is_crawl_id, resolve_inputs
from .reader import iter_pages
from .stream import NotAWarcError, ReadError

__all__ = [
    "BadRecord",
    "NotAWarcError",
    "PageImages",
    "ReadError",
    "crawl_files",
    "is_crawl_id",
    "iter_pages",
    "resolve_inputs",
]
