"""Text, voices and a scene in; speech out: the synthesizer over one of two generators."""
