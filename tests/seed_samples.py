"""The seed document's code samples (AutoBot's long-running operations architecture), as written there.

Only imports are added, and the names its fragments use without defining them (marked "not in the
seed"). Loaded by tests/test_seed_samples.py in a subprocess of its own, or by ``outlast serve --plugin
tests.seed_samples``: the decorator-based migration registers ``codebase_indexing``, replacing the
built-in handler in that process, as it does in the seed.

Driven by the environment (not in the seed): SEED_TREE (the tree the indexing example indexes),
SEED_WORK_LOG (a file each processed file is appended to), SEED_CRASH_AT and SEED_CRASH_FLAG (fail once
at that file, to resume), SEED_WORK_SECONDS (how long each step of the migration guide's example takes).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import List  # noqa: UP035 (the seed's spelling)

from engine import OperationContext as OperationExecutionContext
from engine import OperationType, migrate_timeout_operation, operation

logger = logging.getLogger("seed_samples")

# ---- not in the seed: what its fragments call ----------------------------------------------------

result = {"analysed": 100}
"""What the migration guide's Step 2 returns."""


async def do_work() -> None:
    """The body of the seed's ``# Do work``."""
    await asyncio.sleep(float(os.environ.get("SEED_WORK_SECONDS", "0")))


async def process_file(file_path: Path) -> dict:
    """Index one file: its path and size (fails once at SEED_CRASH_AT, when asked, to be resumed)."""
    crash_at, flag = os.environ.get("SEED_CRASH_AT"), os.environ.get("SEED_CRASH_FLAG")
    if crash_at and flag and file_path.name == crash_at and not os.path.exists(flag):
        Path(flag).touch()
        raise RuntimeError(f"lost the connection while indexing {file_path.name}")
    if os.environ.get("SEED_WORK_LOG"):
        with open(os.environ["SEED_WORK_LOG"], "a") as fh:
            fh.write(file_path.name + "\n")
    return {"path": str(file_path), "size": file_path.stat().st_size}


async def perform_indexing(path: str, patterns: List[str]) -> dict:  # noqa: UP006
    files = sorted(str(f) for p in patterns for f in Path(path).rglob(p))
    return {"files": len(files), "patterns": patterns}


# ---- the seed: "1. Codebase Indexing with Checkpoint/Resume" ---------------------------------------


# Enhanced indexing operation
async def enhanced_indexing_operation(context: OperationExecutionContext):
    codebase_path = Path(os.environ["SEED_TREE"])  # the seed: Path("/home/kali/Desktop/AutoBot")
    file_patterns = ["*.py", "*.js", "*.vue", "*.ts"]
    # not in the seed (elided there): the file list and the names the loop uses
    all_files = sorted(f for pattern in file_patterns for f in codebase_path.rglob(pattern))
    total_files = len(all_files)
    indexed_files = []
    files_per_second = 0.0

    # Check if resuming from checkpoint
    if context.should_resume():
        checkpoint_data = context.get_resume_data()
        processed_files = checkpoint_data.intermediate_results.get("processed_files", [])
        start_index = len(processed_files)
        logger.info(f"Resuming indexing from file {start_index}")
    else:
        processed_files = []
        start_index = 0

    # Process files with progress tracking
    for i, file_path in enumerate(all_files[start_index:], start_index):
        file_info = await process_file(file_path)
        indexed_files.append(file_info)

        # Update progress
        await context.update_progress(
            f"Indexing {file_path.name}",
            i + 1,
            total_files,
            {"files_per_second": files_per_second},
            f"Processed {i + 1} of {total_files} files",
        )

        # Checkpoint every 100 files
        if (i + 1) % 100 == 0:
            await context.save_checkpoint({"processed_files": processed_files + indexed_files}, f"file_{i + 1}")

    return {"indexed": len(processed_files) + len(indexed_files)}  # not in the seed


operation("seed_indexing_example")(enhanced_indexing_operation)  # not in the seed: how it is registered


# ---- the seed: "2. Migration from Existing Timeout Operations" -------------------------------------


# Decorator-based migration
@migrate_timeout_operation(OperationType.CODEBASE_INDEXING, estimated_items=1000)
async def index_codebase(path: str, patterns: List[str]):  # noqa: UP006
    """Automatically migrated to long-running framework"""
    # Original implementation
    return await perform_indexing(path, patterns)


# ---- the seed: "Migration Guide, Step 2: Migrate to Long-Running Framework" ------------------------


# Enhanced pattern
@migrate_timeout_operation(OperationType.CODE_ANALYSIS)
async def long_operation(progress_callback=None):
    # Add progress tracking
    if progress_callback:
        await progress_callback("Starting", 0, 100)

    # Original logic with progress updates
    for i in range(100):
        # Do work
        await do_work()  # not in the seed: its "# Do work"
        if progress_callback:
            await progress_callback(f"Step {i}", i, 100)

    return result
