"""Error types. Every message says what is wrong and how to fix it."""


class MentorError(ValueError):
    """Base class for all errors mentor raises on bad input."""


class DataError(MentorError):
    """A data set, file or split is malformed or missing."""


class TeacherOutputError(MentorError):
    """Teacher outputs have the wrong shape, non-finite values, or do not match the pool."""


class StoreError(MentorError):
    """The teacher-output store is inconsistent with the request (e.g. another teacher wrote it)."""


class ConfigError(MentorError):
    """A configuration file or option is invalid."""
