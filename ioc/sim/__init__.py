"""The simulated accelerator section the demo model learns from and is fed by (``mlioc sim``)."""
