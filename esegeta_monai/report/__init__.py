"""What people look at: figures of the maps over the scan, an HTML report of a run or a cohort,
and a 3D Slicer scene per image — all made from an output folder and its journal."""
