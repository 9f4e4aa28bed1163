"""mtlrun's Hydra sweeper. Hydra only instantiates sweepers found in the `hydra_plugins`
namespace package, so the class lives here; the job planning is in `mtlrun.sweeps`."""
