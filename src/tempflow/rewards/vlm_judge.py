"""A vision-language-model judge: any OpenAI-compatible chat endpoint scores image-prompt pairs with a rubric."""
