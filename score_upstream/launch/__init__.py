"""Launchers that run the SUPERB recipes somewhere other than this shell: :mod:`.slurm` (sbatch jobs)."""
