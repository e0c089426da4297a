"""The core: what is explained (targets), MONAI's window geometry, the window pass that sums exact
window terms, the no-grad prediction, and window-aware evaluation of perturbed inputs.

Nothing here imports the methods, the Explainer, or anything above them (DESIGN.md §4).
"""
