"""Running trained models: dataset evaluation and prediction on image folders."""
