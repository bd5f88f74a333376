//! Fixture access for engine tests (in progress).
