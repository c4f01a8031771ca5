"""Search: spaces (encoding + torch builders), supernets, accuracy predictors, OFA/HURRICANE search."""
