# Before torch loads: its OpenMP threads sleep instead of spinning while they wait for a core
# (a job sharing the machine with another stays fast; see spaces.threads).
from spaces.threads import quiet_openmp

quiet_openmp()
