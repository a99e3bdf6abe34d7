"""Reading Common Crawl: crawl ids to file lists, and WAT / WARC files to pages with images."""
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
