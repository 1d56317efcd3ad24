"""Run folders and the jobs that fill them: the folder contract, job kinds, the job queue, shared-server rules."""
