"""Names shared by :mod:`selfupdate.app`, :mod:`selfupdate.install` and :mod:`selfupdate._shiv`.

A leaf: it imports nothing, so the install side can use the names the app side registers
without importing :mod:`selfupdate.app` (nothing imports the app-facing module).
"""

#: Entry point a new build runs as its trial: ``post-update OLD NEW`` (migrations crossed, then
#: the health check; exit status 0 means the build may be installed).
TRIAL_ENTRY = "post-update"

#: Entry point the new build runs after the handover, same PID: ``update-finish OLD NEW LOG``.
FINISH_ENTRY = "update-finish"

#: The shared-lock file each running build holds in its shiv extraction directory, so that
#: cleaning never removes the extraction of a build that still runs.
INUSE_LOCK = ".in-use.lock"

#: The completion marker of a shiv extraction (it holds the build id): written last, after
#: every file was fsynced, by the archive's slow gate or the seeding; the fast start uses an
#: extraction only when it is there (selfupdate._shiv._main).
EXTRACTION_DONE = ".selfupdate-complete"


#: Exit status of ``post-update`` when the build's own migration or health check failed: the
#: one verdict that marks a release bad. Any other failure of the trial (it could not extract,
#: was killed, ran out of space, timed out, exited otherwise) says nothing about the release
#: and is retried at the next update. 65 is ``EX_DATAERR`` of sysexits.h: the state was refused.
TRIAL_REFUSED = 65
