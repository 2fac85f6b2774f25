"""The whole MedGen3D method over the stage bundles: train every stage, generate a synthetic dataset, and run the
paper's downstream experiment. Stages talk only through folders and checkpoints."""
