build-conf/obj/conf/conf.o: conf/conf.c conf/internal.h conf/conf.h
conf/internal.h:
conf/conf.h:
