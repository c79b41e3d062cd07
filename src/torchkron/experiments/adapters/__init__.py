"""The adapters study (``torchkron adapt``): PEFT LoKr (accelerated) against LoRA at equal
trainable parameters, adapting the MNIST MLP to Fashion-MNIST."""
